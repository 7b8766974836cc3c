"""Flight-recorder mode: light capture every step, a ring of full steps, triggers, and a writer
process that outlives the trainer (issue 13).  Being built; see the modules of this package."""
