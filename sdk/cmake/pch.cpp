// Translation unit that carries the shared precompiled header of the built-in plugins.
