"""The local stack: storage emulator, both functions and the web page behind one router.

Development and test tooling only; never part of a function bundle.
"""
