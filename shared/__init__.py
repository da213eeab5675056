"""Code both sides import (box and laptop): schema, states, manifest, journal, paths; stdlib + msgpack, 3.8+."""
