"""The fault-injection suite: faults injected on purpose (kill -9, damaged files, crafted pickles, full
disks), each case asserting its outcome: a fallback with the losses of an uninterrupted run, or a clear
message and exit code 2."""
