"""Distillation (knowledge distillation, IDN, PAD-Net). Not implemented yet."""
