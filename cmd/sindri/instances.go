package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/sindri-db/sindri/pkg/client"
)

func (a *app) instancesCmd() *cobra.Command {
	list := &cobra.Command{
		Use: "list", Short: "list your instances (all of them for the upload user)", Args: args(),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			instances, err := cl.ListInstances(c.Context())
			if err != nil {
				return err
			}
			return a.showInstances(instances)
		},
	}
	get := &cobra.Command{
		Use: "get ID", Short: "show one instance", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			return a.withInstance(c, argv[0], func(cl *client.Client, id int64) (*client.Instance, error) {
				return cl.GetInstance(c.Context(), id)
			})
		},
	}
	var opts createOptions
	create := &cobra.Command{
		Use: "create [IMAGE_ID]", Short: "create an instance of an image (default: the newest ready image; --source: the newest of a source)",
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, argv []string) error {
			image := ""
			if len(argv) == 1 {
				image = argv[0]
			}
			inst, err := a.createInstance(c, image, opts)
			if err != nil {
				return err
			}
			if err := a.showInstance(inst); err != nil || a.json {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "\nto connect: eval $(sindri env %d); psql\n", inst.ID)
			return err
		},
	}
	opts.flags(create)
	destroy := &cobra.Command{
		Use: "destroy ID", Short: "stop and destroy an instance", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			id, err := parseID("instance", argv[0])
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.DestroyInstance(c.Context(), id); err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(a.stdout, "instance %d destroyed\n", id)
			}
			return nil
		},
	}
	reset := &cobra.Command{
		Use: "reset ID", Short: "throw away an instance's changes: back to its image's data", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			return a.withInstance(c, argv[0], func(cl *client.Client, id int64) (*client.Instance, error) {
				return cl.ResetInstance(c.Context(), id)
			})
		},
	}
	var off bool
	protect := &cobra.Command{
		Use: "protect ID", Short: "protect an instance from expiry (--off: unprotect it)", Args: args("ID"),
		RunE: func(c *cobra.Command, argv []string) error {
			return a.withInstance(c, argv[0], func(cl *client.Client, id int64) (*client.Instance, error) {
				protected := !off
				return cl.UpdateInstance(c.Context(), id, nil, &protected)
			})
		},
	}
	protect.Flags().BoolVar(&off, "off", false, "remove the protection")
	return group(&cobra.Command{Use: "instances", Aliases: []string{"instance"}, Short: "manage instances (thin clones)"},
		list, get, create, destroy, reset, protect)
}

type createOptions struct {
	ttl       time.Duration
	protected bool
	source    string
}

func (o *createOptions) flags(c *cobra.Command) {
	c.Flags().StringVar(&o.source, "source", "", "clone the newest ready image of source `NAME`")
	c.Flags().DurationVar(&o.ttl, "ttl", 0, "lifetime of the instance, such as 30m or 2h (default: the server's)")
	c.Flags().BoolVar(&o.protected, "protected", false, "protect the instance from expiry")
}

// createInstance creates an instance of image (an id, or "" for the newest
// ready image).
func (a *app) createInstance(c *cobra.Command, image string, o createOptions) (*client.Instance, error) {
	var id int64
	if image != "" {
		var err error
		if id, err = parseID("image", image); err != nil {
			return nil, err
		}
	}
	if o.ttl < 0 {
		return nil, usageError{fmt.Errorf("--ttl %s is negative", o.ttl)}
	}
	cl, err := a.client()
	if err != nil {
		return nil, err
	}
	if id != 0 && o.source != "" {
		return nil, usageError{errors.New("give an image id or --source, not both")}
	}
	if id == 0 {
		img, err := newestReadyImage(c.Context(), cl, o.source)
		if err != nil {
			return nil, err
		}
		id = img.ID
	}
	return cl.CreateInstance(c.Context(), id, o.ttl, o.protected)
}

func (a *app) withInstance(c *cobra.Command, arg string, do func(*client.Client, int64) (*client.Instance, error)) error {
	id, err := parseID("instance", arg)
	if err != nil {
		return err
	}
	cl, err := a.client()
	if err != nil {
		return err
	}
	inst, err := do(cl, id)
	if err != nil {
		return err
	}
	return a.showInstance(inst)
}

func (a *app) showInstances(instances []client.Instance) error {
	if a.json {
		if instances == nil {
			instances = []client.Instance{}
		}
		return a.printJSON(instances)
	}
	w := a.table()
	fmt.Fprintln(w, "ID\tIMAGE\tSTATUS\tHOST\tPORT\tEXPIRES AT\tPROTECTED\tCREATED AT")
	for _, in := range instances {
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s\n", in.ID, in.ImageID, in.Status, in.Hostname, in.Port,
			whenPtr(in.ExpiresAt), yesNo(in.Protected), when(in.CreatedAt))
	}
	return w.Flush()
}

func (a *app) showInstance(in *client.Instance) error {
	if a.json {
		return a.printJSON(in)
	}
	w := a.table()
	fmt.Fprintf(w, "id\t%d\n", in.ID)
	fmt.Fprintf(w, "image_id\t%d\n", in.ImageID)
	fmt.Fprintf(w, "status\t%s\n", in.Status)
	if in.Error != "" {
		fmt.Fprintf(w, "error\t%s\n", in.Error)
	}
	fmt.Fprintf(w, "hostname\t%s\n", in.Hostname)
	fmt.Fprintf(w, "port\t%d\n", in.Port)
	fmt.Fprintf(w, "database_url\t%s\n", in.DatabaseURL)
	fmt.Fprintf(w, "expires_at\t%s\n", whenPtr(in.ExpiresAt))
	fmt.Fprintf(w, "protected\t%s\n", yesNo(in.Protected))
	fmt.Fprintf(w, "created_at\t%s\n", when(in.CreatedAt))
	fmt.Fprintf(w, "updated_at\t%s\n", when(in.UpdatedAt))
	return w.Flush()
}
