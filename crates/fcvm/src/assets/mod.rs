//! Guest assets (`fcvm setup`): kernel and initramfs. (stub — being written)
