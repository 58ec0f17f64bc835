"""Benchmarks: the director against direct routing, kernel NAT and HAProxy in one
namespace lab (``python3 -m benchmarks.run``), and microbenchmarks of the Python packet
path without a kernel (``python3 -m benchmarks.micro``). They print figures; nothing here
asserts a timing."""
