"""Flight-recorder mode (``record(mode="flight")``): every step measured lightly and captured in
full into a ring, written when a trigger fires, by a writer process that outlives the trainer.

The rooms, in the order a step passes through them:

* :mod:`~recorder.flight.lightcapture` (with :mod:`~recorder.flight.lightstats`, its native
  path :mod:`~recorder.flight.lightnative` and its torch path :mod:`~recorder.flight.lighttorch`):
  light capture, module and optimizer hooks only;
* :mod:`~recorder.flight.alarms` (with :mod:`~recorder.flight.spike`): the triggers, no torch;
  :mod:`~recorder.flight.remote`: other ranks' triggers through the c10d store;
* :mod:`~recorder.flight.keeper`: what the recorder does at each ``rec.step()`` (hold, release,
  ``on_trigger``);
* :mod:`~recorder.flight.ring`: the ring and the in-process ring sink;
  :mod:`~recorder.flight.process` (with :mod:`~recorder.flight.wire`,
  :mod:`~recorder.flight.channel`, :mod:`~recorder.flight.deathwatch` and the child's
  :mod:`~recorder.flight.writerproc` and :mod:`~recorder.flight.wiredecode`): the writer process.

This ``__init__`` imports nothing: :mod:`recorder.options` reads the triggers' settings from
:mod:`~recorder.flight.alarms` without torch, and that must not pull in the hooks.  The public
names are re-exported by :mod:`recorder` (``TriggerOptions``, ``SpikeOptions``,
``TriggerFired``, ``Fired``).
"""
