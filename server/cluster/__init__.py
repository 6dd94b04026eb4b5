"""Hearth on a Ray cluster (`hearth serve --ray`): replicas of the whole server behind one
ingress whose router prefers the replica holding a request's prompt prefix."""
