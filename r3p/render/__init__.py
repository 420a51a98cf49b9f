"""Volume rendering of the tri-plane (EG3D ImportanceRenderer semantics) as pure functions on arrays.

Submodules are imported explicitly (`from r3p.render import renderer`); nothing heavy is imported here.
"""
