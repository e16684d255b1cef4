"""Real Dubbo peers for the end-to-end tests: a provider (dubbo-ssl-python's Hessian2) and client helpers."""
