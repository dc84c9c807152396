"""Serving: int8 tables, export of a trained run as one file, and scoring raw rows with it.

Layout: serving may import data, models and training; only the cli imports serving.
"""
from .export import ExportResult, export_run
from .predict import ServedModel, load_served, predict_file
from .quantize import NoInt8FormError, embedding_bytes, quantize_collection, quantize_int8

__all__ = ["quantize_int8", "quantize_collection", "embedding_bytes", "NoInt8FormError", "export_run", "ExportResult", "load_served",
           "ServedModel", "predict_file"]
