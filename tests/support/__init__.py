"""Helpers shared by several test modules (not fixtures: those are in tests/conftest.py). A test module
imports from here or from the other support modules of tests/, never from another test module."""
