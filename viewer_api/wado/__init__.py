"""WADO-RS (PS3.18 10.4): content negotiation, multipart framing, frames, rendering."""
