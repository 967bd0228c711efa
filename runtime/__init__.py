"""Compiled modules, their reports, and artifact save/load."""

from .module import CompiledModule, load, read_report
from .report import BlockReport, Report

__all__ = ["BlockReport", "CompiledModule", "Report", "load", "read_report"]
