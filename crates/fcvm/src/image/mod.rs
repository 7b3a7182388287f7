//! Images: reference → read-only root filesystem image + config. (stub — being written)
