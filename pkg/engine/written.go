package engine

import (
	"context"

	"github.com/sindri-db/sindri/pkg/store"
)

// Written returns, by instance id, the bytes each of the actor's
// instances (every instance for the upload user) has written: its
// volume's exclusive bytes, the disk it holds beyond its image. An
// instance whose figure cannot be read now (being made or destroyed) is
// left out. It asks the storage once per instance (on ZFS a command
// each): callers cache it.
func (s InstanceService) Written(ctx context.Context, a Actor) (map[int64]int64, error) {
	instances, err := s.List(ctx, a)
	if err != nil {
		return nil, err
	}
	written := make(map[int64]int64, len(instances))
	for _, inst := range instances {
		if inst.Status == store.InstanceCreating || inst.Status == store.InstanceDestroying {
			continue
		}
		if err := ctx.Err(); err != nil {
			return written, err
		}
		if n, err := s.e.opts.Storage.ExclusiveBytes(ctx, InstanceVolume(inst.ID)); err == nil {
			written[inst.ID] = n
		}
	}
	return written, nil
}
