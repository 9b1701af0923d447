"""The client agent: reads, chunks and compresses on the client; keys stay on the director."""
