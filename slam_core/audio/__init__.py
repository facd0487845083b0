"""Audio: reading/validating (io), voice-activity segmentation (vad)."""
