"""Multi-ISA toolchain: hmigrate-cc, aligned layout, equivalence points, metadata."""
