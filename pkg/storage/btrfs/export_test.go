//go:build linux

package btrfs

// SetQgroupSearchBatch makes a tree search of the quota groups return at
// most n items, until the returned function restores the batch.
func SetQgroupSearchBatch(n int) (restore func()) {
	was := qgroupSearchBatch
	qgroupSearchBatch = n
	return func() { qgroupSearchBatch = was }
}

// SetListIDsFrom makes ExclusiveBytesOf list every subvolume from n names
// on, until the returned function restores the threshold.
func SetListIDsFrom(n int) (restore func()) {
	was := listIDsFrom
	listIDsFrom = n
	return func() { listIDsFrom = was }
}
