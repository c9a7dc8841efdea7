//! (softmax family CPU kernels: to be filled by its owner.)
