"""`verger demo`: the event-driven flow on one machine (moto on loopback, the real handler and job) and its report."""
