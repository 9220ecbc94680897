// A minimal Pulumi language host for Python programs, written for gpustack-pulumi's tests and CI.
//
// The upstream host (module github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) is not served by the
// Go module proxy these machines reach, so scripts/pulumi-cli.sh builds this one instead, against the same sdk/v3
// as the CLI. It does what a `pulumi up` of a Python project needs and nothing more:
//
//   - Run: starts `<python> -u pulumi-language-python-exec --monitor … PROGRAM` (the SDK's own runner script,
//     installed next to this binary), with the stack config in PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS. The
//     Python comes from the project's `runtime.options.virtualenv` (relative to the project root), else
//     $PULUMI_PYTHON_CMD, else python3 on PATH.
//   - GetRequiredPackages / GetRequiredPlugins: none (plugins must already be on PATH; tests run with automatic
//     plugin acquisition off).
//   - RunPlugin, for analyzer plugins only (a Python policy pack: `pulumi preview --policy-pack DIR`, which this
//     CLI runs through the language host named by DIR/PulumiPolicy.yaml's runtime): starts
//     `<python> -u -m pulumi.policy ENGINE_ADDRESS DIR` (the SDK's policy-pack runner), its output streamed back.
//     The Python comes from the pack's `runtime.options.virtualenv` (relative to the pack), else
//     $PULUMI_PYTHON_CMD, else python3 on PATH (so an activated virtualenv).
//   - Handshake, GetPluginInfo, About, GetProgramDependencies, InstallDependencies: minimal answers.
//
// Everything else answers Unimplemented.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// version is reported to the engine as this plugin's version.
const version = "3.0.0"

// userActionableExit is the runner's exit code after it already showed the error to the user.
const userActionableExit = 32

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	engineAddress string
	tracing       string
	execScript    string
}

func main() {
	h := &host{}
	// The engine starts language hosts as `pulumi-language-python [-flags…] ENGINE_ADDRESS`; flags we do not know
	// are ignored so a newer engine's extra flags do not break us.
	for _, arg := range os.Args[1:] {
		switch {
		case strings.HasPrefix(arg, "-tracing="):
			h.tracing = strings.TrimPrefix(arg, "-tracing=")
		case strings.HasPrefix(arg, "-"):
		default:
			h.engineAddress = arg
		}
	}
	self, err := os.Executable()
	if err != nil {
		fatal(err)
	}
	if resolved, err := filepath.EvalSymlinks(self); err == nil {
		self = resolved
	}
	h.execScript = filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")
	if _, err := os.Stat(h.execScript); err != nil {
		fatal(fmt.Errorf("the SDK runner script is missing next to the language host: %w", err))
	}

	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, h)
			return nil
		},
		Options: rpcutil.OpenTracingServerInterceptorOptions(nil),
	})
	if err != nil {
		fatal(err)
	}
	// The engine reads the port from the first line of stdout.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
	os.Exit(1)
}

func (h *host) Handshake(
	_ context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	if req.GetEngineAddress() != "" {
		h.engineAddress = req.GetEngineAddress()
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version}, nil
}

func (h *host) GetRequiredPlugins(
	context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *host) GetRequiredPackages(
	context.Context, *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *host) InstallDependencies(
	*pulumirpc.InstallDependenciesRequest, grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse],
) error {
	// The project's virtualenv is made by scripts/setup.sh.
	return nil
}

func (h *host) About(_ context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	python, _ := pythonFor(req.GetInfo())
	return &pulumirpc.AboutResponse{Executable: python, Version: version}, nil
}

func (h *host) GetProgramDependencies(
	context.Context, *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	return &pulumirpc.GetProgramDependenciesResponse{}, nil
}

// virtualenvOf returns the absolute virtualenv directory named by the project's runtime options, or "".
func virtualenvOf(info *pulumirpc.ProgramInfo) string {
	if info == nil || info.GetOptions() == nil {
		return ""
	}
	value, ok := info.GetOptions().GetFields()["virtualenv"]
	if !ok {
		return ""
	}
	venv := value.GetStringValue()
	if venv == "" {
		return ""
	}
	if !filepath.IsAbs(venv) {
		venv = filepath.Join(info.GetRootDirectory(), venv)
	}
	return venv
}

// pythonFor picks the interpreter that runs the program.
func pythonFor(info *pulumirpc.ProgramInfo) (string, string) {
	if venv := virtualenvOf(info); venv != "" {
		return filepath.Join(venv, "bin", "python"), venv
	}
	if cmd := os.Getenv("PULUMI_PYTHON_CMD"); cmd != "" {
		return cmd, ""
	}
	return "python3", ""
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	info := req.GetInfo()
	python, venv := pythonFor(info)
	if venv != "" {
		if _, err := os.Stat(python); err != nil {
			return &pulumirpc.RunResponse{Error: fmt.Sprintf(
				"the 'virtualenv' option in Pulumi.yaml names %q, which has no bin/python: %v", venv, err)}, nil
		}
	}

	program := req.GetProgram()
	if info != nil && info.GetProgramDirectory() != "" {
		program = filepath.Join(info.GetProgramDirectory(), info.GetEntryPoint())
	}
	root := ""
	if info != nil {
		root = info.GetRootDirectory()
	}

	args := []string{"-u", h.execScript,
		"--monitor", req.GetMonitorAddress(),
		"--engine", h.engineAddress,
		"--project", req.GetProject(),
		"--stack", req.GetStack(),
		"--pwd", req.GetPwd(),
		"--parallel", strconv.Itoa(int(req.GetParallel())),
		"--organization", req.GetOrganization(),
		"--root_directory", root,
	}
	if req.GetDryRun() {
		args = append(args, "--dry_run", "true")
	}
	if h.tracing != "" {
		args = append(args, "--tracing", h.tracing)
	}
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	config, err := json.Marshal(req.GetConfig())
	if err != nil {
		return nil, err
	}
	secretKeys, err := json.Marshal(req.GetConfigSecretKeys())
	if err != nil {
		return nil, err
	}

	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Dir = req.GetPwd()
	env := os.Environ()
	if venv != "" {
		env = append(env, "VIRTUAL_ENV="+venv,
			"PATH="+filepath.Join(venv, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	env = append(env, "PULUMI_CONFIG="+string(config), "PULUMI_CONFIG_SECRET_KEYS="+string(secretKeys))
	cmd.Env = env
	// The engine shows the language host's own stdout/stderr to the user; the program's go there too.
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr

	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if exitErr.ExitCode() == userActionableExit {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d",
				exitErr.ExitCode())}, nil
		}
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("problem executing program (could not run %s): %v",
			python, err)}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// streamWriter sends what a plugin writes to one of its streams back to the engine.
type streamWriter struct {
	send   func(*pulumirpc.RunPluginResponse) error
	stderr bool
}

func (w *streamWriter) Write(p []byte) (int, error) {
	data := append([]byte(nil), p...)
	response := &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stdout{Stdout: data}}
	if w.stderr {
		response = &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stderr{Stderr: data}}
	}
	if err := w.send(response); err != nil {
		return 0, err
	}
	return len(p), nil
}

// RunPlugin runs a Python policy pack (kind "analyzer") with the SDK's runner, `python -m pulumi.policy`.
func (h *host) RunPlugin(
	req *pulumirpc.RunPluginRequest, server grpc.ServerStreamingServer[pulumirpc.RunPluginResponse],
) error {
	if req.GetKind() != "analyzer" {
		return status.Errorf(codes.Unimplemented, "this language host runs only analyzer plugins, not %q",
			req.GetKind())
	}
	info := req.GetInfo()
	dir := ""
	if info != nil {
		dir = info.GetProgramDirectory()
	}
	if dir == "" {
		dir = req.GetProgram()
	}
	python, venv := pythonFor(info)
	if venv == "" {
		// The environment the engine gives the plugin decides, as it would for a plugin started directly.
		for _, entry := range req.GetEnv() {
			if value, ok := strings.CutPrefix(entry, "PULUMI_PYTHON_CMD="); ok && value != "" {
				python = value
			}
		}
	}
	// The engine passes its own flags (logging, tracing) before the engine address; the runner takes the address
	// and the pack's directory.
	args := []string{"-u", "-m", "pulumi.policy"}
	for _, arg := range req.GetArgs() {
		if !strings.HasPrefix(arg, "-") {
			args = append(args, arg)
		}
	}
	args = append(args, dir)

	var mu sync.Mutex
	send := func(response *pulumirpc.RunPluginResponse) error {
		mu.Lock()
		defer mu.Unlock()
		return server.Send(response)
	}
	cmd := exec.CommandContext(server.Context(), python, args...)
	cmd.Dir = req.GetPwd()
	if cmd.Dir == "" {
		cmd.Dir = dir
	}
	env := req.GetEnv()
	if len(env) == 0 {
		env = os.Environ()
	}
	if venv != "" {
		env = append(env, "VIRTUAL_ENV="+venv,
			"PATH="+filepath.Join(venv, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	cmd.Env = env
	cmd.Stdout = io.Writer(&streamWriter{send: send})
	cmd.Stderr = io.Writer(&streamWriter{send: send, stderr: true})
	code := int32(0)
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			return fmt.Errorf("could not run the policy pack with %s: %w", python, err)
		}
		code = int32(exitErr.ExitCode())
	}
	return send(&pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: code}})
}
