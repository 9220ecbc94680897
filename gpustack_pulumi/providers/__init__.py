"""Pulumi dynamic providers: thin glue between Pulumi and the pure core (placement, engines) and the agents.

Providers keep only plain data on ``self`` (they are pickled into state) and build clients inside methods.
"""
