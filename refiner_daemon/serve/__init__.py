"""Serving refiners over ZeroMQ: the socket-free service, the server that only receives, decodes,
dispatches, encodes and replies, and training jobs that stream progress and resume. Uses
``common``, ``refiner`` and ``detector``.

Entry points: ``refiner-daemon serve`` (:mod:`refiner_daemon.cli`),
:class:`refiner_daemon.serve.service.RefinerService` (callable without sockets) and
:class:`refiner_daemon.serve.server.DaemonServer`.
"""
