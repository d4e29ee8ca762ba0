"""The worker (trellis-microservice): one GPU, one generation at a time, behind ``generation.contract``."""
