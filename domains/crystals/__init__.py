"""Crystals domain: SLICES codec, tokenizer with grammar, MatterGPT data, metrics and CLI."""

from domains.crystals.codec import decode, encode
from domains.crystals.slices import SlicesError, SlicesGraph, check, parse

__all__ = ["SlicesError", "SlicesGraph", "check", "decode", "encode", "parse"]
