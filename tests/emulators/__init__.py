"""Tests of the local service emulators."""
