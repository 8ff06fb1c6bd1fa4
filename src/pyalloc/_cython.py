"""What the engine modules need of ``cython`` when Cython is not installed.

Compiled, an engine module's ``import cython`` is resolved by the compiler
and nothing here is used. Interpreted, the module imports the real
``cython`` (its pure-Python shadow) when it is installed, and this stand-in
otherwise: the engine only asks whether it is compiled.
"""

compiled = False
