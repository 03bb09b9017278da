package storage

import "syscall"

// StatCapacity reports the total and free bytes of the filesystem at path.
func StatCapacity(path string) (Capacity, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return Capacity{}, err
	}
	return Capacity{
		TotalBytes: int64(st.Blocks) * st.Bsize,
		FreeBytes:  int64(st.Bavail) * st.Bsize,
	}, nil
}
