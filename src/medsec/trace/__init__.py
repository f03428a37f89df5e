"""Requirement traceability: which feature and which test covers which line of the handbook.

``catalogue`` holds the requirement IDs (SM-, PA-, RA-, RL-) with their text and the features map (what
implements each requirement); ``matrix`` joins them with test outcomes, renders CSV, HTML and JSON, and
holds the release gate: every requirement needs at least one passing test.
"""
