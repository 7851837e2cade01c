"""Rollout: traffic routing, canary gates, shadow comparison and A/B experiments."""
