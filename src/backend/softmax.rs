//! (softmax family: to be filled by its owner.)
