"""Add-on preferences (daemon endpoint and CURVE keys) and where user data goes.

With the extension layout the add-on's code lives in a bundled wheel, so its own package
(``blender_addon``) is not the extension's package (``bl_ext.<repo>.fisheye_synth``). The
extension's shim passes its ``__package__`` to ``registration.register``; it is kept here and
used as the preferences' ``bl_idname`` and for ``bpy.utils.extension_path_user``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import bpy

from protocol.version import DEFAULT_ENDPOINT

DEFAULT_PACKAGE = "blender_addon"  # when registered directly, not as an installed extension
_PACKAGE = {"name": DEFAULT_PACKAGE}


def set_addon_package(name: str | None) -> None:
    _PACKAGE["name"] = name or DEFAULT_PACKAGE


def addon_package() -> str:
    return _PACKAGE["name"]


def user_dir(*parts: str) -> Path:
    """A folder in the extension's user directory (created), never inside the add-on itself."""
    package = addon_package()
    override = os.environ.get("FISHEYE_SYNTH_USER_DIR")
    if override:  # tests and headless scripts that must not touch the user's profile
        root = Path(override)
    elif package.startswith("bl_ext."):
        root = Path(bpy.utils.extension_path_user(package, create=True))
    else:
        # Registered from source (tests, scripts): Blender's user data folder.
        root = Path(bpy.utils.user_resource("DATAFILES", path="fisheye_synth", create=True))
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass(frozen=True)
class DaemonSettings:
    """The preferences as plain values (defaults when the add-on is not enabled as such)."""

    endpoint: str = DEFAULT_ENDPOINT
    timeout_ms: int = 3000
    retries: int = 1
    server_public_key: str = ""
    client_public_key: str = ""
    client_secret_key: str = ""

    def key(self) -> tuple[str, ...]:
        return (self.endpoint, str(self.timeout_ms), str(self.retries), self.server_public_key,
                self.client_public_key, self.client_secret_key)


class FSYNTH_AP_preferences(bpy.types.AddonPreferences):
    """Where the refiner daemon listens and how to authenticate to it."""

    bl_idname = DEFAULT_PACKAGE

    endpoint: bpy.props.StringProperty(
        name="Daemon endpoint", default=DEFAULT_ENDPOINT,
        description="ZeroMQ address of `refiner-daemon serve`, e.g. tcp://127.0.0.1:5555")
    timeout_ms: bpy.props.IntProperty(
        name="Timeout (ms)", default=3000, min=100, max=120000,
        description="How long one try waits for the daemon before retrying on a new socket")
    retries: bpy.props.IntProperty(
        name="Retries", default=1, min=0, max=10,
        description="Resends before the daemon is reported unreachable")
    server_public_key: bpy.props.StringProperty(
        name="Server public key", default="",
        description="CURVE public key of the daemon (Z85, 40 characters); empty for loopback without encryption")
    client_public_key: bpy.props.StringProperty(
        name="Client public key", default="", description="This client's CURVE public key (Z85)")
    client_secret_key: bpy.props.StringProperty(
        name="Client secret key", default="", subtype="PASSWORD",
        description="This client's CURVE secret key (Z85); make a pair with `refiner-daemon keygen`")

    makehuman_assets: bpy.props.StringProperty(
        name="MakeHuman assets", default="", subtype="DIR_PATH",
        description="Folder with MakeHuman garments, shoes, hats and hair (base/clothes, base/hair); "
                    "empty: $FISHEYE_SYNTH_MAKEHUMAN_ASSETS or ../shared/data/makehuman_assets, else "
                    "painted clothing")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "makehuman_assets")
        layout.prop(self, "endpoint")
        row = layout.row()
        row.prop(self, "timeout_ms")
        row.prop(self, "retries")
        box = layout.box()
        box.label(text="CURVE encryption (needed for a daemon on another machine)")
        box.prop(self, "server_public_key")
        box.prop(self, "client_public_key")
        box.prop(self, "client_secret_key")
        layout.label(text=f"User data: {user_dir()}")


_HEADLESS: dict[str, DaemonSettings | None] = {"settings": None}


def use_settings(settings: DaemonSettings | None) -> None:
    """Headless scripts (no enabled extension, so no preferences): the daemon settings to use."""
    _HEADLESS["settings"] = settings


def daemon_settings(context: bpy.types.Context | None = None) -> DaemonSettings:
    if _HEADLESS["settings"] is not None:
        return _HEADLESS["settings"]
    context = context or bpy.context
    addon = context.preferences.addons.get(addon_package())
    prefs = getattr(addon, "preferences", None) if addon is not None else None
    if prefs is None or not hasattr(prefs, "endpoint"):
        return DaemonSettings()
    return DaemonSettings(prefs.endpoint, prefs.timeout_ms, prefs.retries, prefs.server_public_key.strip(),
                          prefs.client_public_key.strip(), prefs.client_secret_key.strip())


def makehuman_assets(context: bpy.types.Context | None = None) -> str | None:
    """The asset folder to render people with: the preference, else the default search
    (``core.garments.find_assets_root``); None when there is none (painted clothing)."""
    from blender_addon.core.garments import AssetError, find_assets_root

    context = context or bpy.context
    addon = context.preferences.addons.get(addon_package())
    prefs = getattr(addon, "preferences", None) if addon is not None else None
    explicit = bpy.path.abspath(prefs.makehuman_assets) if getattr(prefs, "makehuman_assets", "") else None
    try:
        root = find_assets_root(explicit)
    except AssetError:
        return None
    return str(root) if root is not None else None
