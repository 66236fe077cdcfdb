"""rl_jax."""
