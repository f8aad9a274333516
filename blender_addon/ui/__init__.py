"""The add-on's Blender UI: preferences, scene properties, operators, the sidebar panel and
the live preview. Every operator is a thin wrapper over pure functions in ``blender_addon.core``
and ``protocol`` (or the Blender helpers in ``blender_addon.bl``), which headless scripts call
directly."""
