"""What every stage stands on: errors, artifacts and their manifests, atomic writes and staging, disk and input
limits, the output folder, progress, library versions.
"""
