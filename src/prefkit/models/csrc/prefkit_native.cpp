// The one translation unit the build compiles (prefkit/models/native.py): torch's headers,
// most of a build's ~8 s, are parsed once for all of prefkit's C++ operators.
#include "packed_linear.cpp"
#include "shared_prefix_attention.cpp"
#include "uniform_noise.cpp"
