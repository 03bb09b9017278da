package engine

import (
	"context"

	"github.com/sindri-db/sindri/pkg/store"
)

// Written returns, by instance id, the bytes each of the actor's
// instances (every instance for the upload user) has written: its
// volume's exclusive bytes, the disk it holds beyond its image. An
// instance whose figure cannot be read now (being made or destroyed) is
// left out. It reads all the figures in one storage call, which is
// filesystem-wide (a BTRFS transaction commit, a listing of every ZFS
// dataset): callers cache it.
func (s InstanceService) Written(ctx context.Context, a Actor) (map[int64]int64, error) {
	instances, err := s.List(ctx, a)
	if err != nil {
		return nil, err
	}
	written := make(map[int64]int64, len(instances))
	idOf := make(map[string]int64, len(instances))
	volumes := make([]string, 0, len(instances))
	for _, inst := range instances {
		if inst.Status == store.InstanceCreating || inst.Status == store.InstanceDestroying {
			continue
		}
		v := InstanceVolume(inst.ID)
		idOf[v] = inst.ID
		volumes = append(volumes, v)
	}
	if len(volumes) == 0 {
		return written, nil
	}
	used, err := s.e.opts.Storage.ExclusiveBytesOf(ctx, volumes)
	if err != nil {
		return written, err
	}
	for v, n := range used {
		written[idOf[v]] = n
	}
	return written, nil
}
