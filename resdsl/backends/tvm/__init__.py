"""The TVM backend. Importing it sets the TVM runtime's thread count to the physical
cores (see `target.configure_threads`) before any kernel runs."""

from resdsl.backends.tvm.target import configure_threads

configure_threads()
