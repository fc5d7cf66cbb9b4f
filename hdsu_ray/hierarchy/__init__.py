"""The four-level medical concept hierarchy (MeSH 2017 + ICD-10-CM) and forget-target resolution.

Level mapping, curated synonyms and default target lists are data files in this package
(``levels.yaml``, ``synonyms.yaml``, ``targets.yaml``); see docs/hierarchy.md.
"""

from hdsu_ray.hierarchy.build import build_hierarchy, load_hierarchy
from hdsu_ray.hierarchy.model import TARGET_SYNTAX, Concept, ConceptHierarchy

__all__ = ["TARGET_SYNTAX", "Concept", "ConceptHierarchy", "build_hierarchy", "load_hierarchy"]
