"""The reliability and security campaign: fuzzing, crash consistency, exhaustion, signatures, exposure, load."""
