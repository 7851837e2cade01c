"""Deployment at scale: the Ray cluster launcher YAML and KubeRay manifests rendered from rayml's configs, and a
local multi-node rehearsal."""
