"""Deployment material without Flower: TLS certificates, device keys, the state folder layout.

The server CLI (``fedrec server``) and the device CLI (``fedrec device``) are
thin process controllers over these functions; everything that can be checked
before a Flower process starts is checked here, with an error naming the file.
"""
