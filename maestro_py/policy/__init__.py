"""Whether a tick may spawn now, and what happens after its run: the reliability and spend guards."""
