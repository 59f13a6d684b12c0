"""Tracker settings in ultralytics' own format (package data of ``configs``)."""
