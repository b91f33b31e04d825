"""Image sources: Docker Hub, Docker Registry v2, JFrog Artifactory, the docker daemon."""
