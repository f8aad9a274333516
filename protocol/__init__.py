"""The contract between the Blender add-on and the refinement daemon.

Message types, the codec (msgpack header plus raw array frames), limits, errors, and the
crop/reinsertion geometry both sides must agree on. Pure Python and numpy: only
``protocol.transport`` imports ``zmq``; nothing here imports bpy or torch.
"""
