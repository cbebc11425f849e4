"""bioscale: reproduce and extend benchmarks of biologically-motivated learning rules at scale."""

__version__ = "0.1.0"
