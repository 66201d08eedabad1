//! The command line: argument parsing, output and exit codes.
//!
//! Exit codes: 0 done; 1 the environment got in the way (repository state, locks, disk);
//! 2 bad input (arguments, names, files). Results go to stdout (`--json` for machines),
//! warnings and errors to stderr as `error: …` with a `hint: …` line when there is an obvious fix.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use git2::Repository;

use crate::error::{Error, Result};
use crate::names::{EvidenceRoot, Kind, Template};
use crate::proof::{self, Fact, Status};
use crate::record::{self, RecordRequest, Recorded};

/// Proof of infrastructure builds, committed into git.
#[derive(Debug, Parser)]
#[command(name = "git-evidence", version, about, propagate_version = true)]
pub struct Cli {
    /// Run as if started in PATH (like `git -C`).
    #[arg(
        short = 'C',
        value_name = "PATH",
        global = true,
        help_heading = "Global options"
    )]
    pub chdir: Option<PathBuf>,
    /// Print nothing but errors (and --json output).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,
    /// Say more about what happens; twice for even more.
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
    /// Print the result as JSON on stdout.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record one finished run (a log file and an exit code) as evidence.
    Record(RecordArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Build,
    Init,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Success,
    Failed,
    Cancelled,
}

/// Arguments of `record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Template name: 1-64 of a-z 0-9 . _ -, not `latest`. Required for builds.
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
    /// The run's complete log; stored byte for byte.
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,
    /// The run's exit code: 0 records a success on the branch, anything else a failed run.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub exit_code: i32,
    /// What ran: a template build or `packer init`.
    #[arg(long, value_enum, default_value = "build")]
    pub kind: KindArg,
    /// Override the status the exit code implies (e.g. `cancelled` for an interrupted build).
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// When the run started (RFC 3339); now by default. Names the run folder.
    #[arg(long, value_name = "RFC3339")]
    pub started_at: Option<String>,
    /// When the run finished (RFC 3339); unknown by default.
    #[arg(long, value_name = "RFC3339")]
    pub finished_at: Option<String>,
    /// A fact about the run, KEY=VALUE; `vmid` and `node` have fields of their own. Repeatable.
    #[arg(long = "fact", value_name = "KEY=VALUE")]
    pub facts: Vec<String>,
    /// Branch to record onto; the current branch by default.
    #[arg(long)]
    pub branch: Option<String>,
    /// Folder for evidence in the tree; `git config evidence.root` or `evidence` by default.
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,
    /// Add a Signed-off-by trailer of the committer (default: `git config evidence.signoff`).
    #[arg(long)]
    pub signoff: bool,
}

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            e.exit_code()
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::DEBUG,
        (false, _) => tracing::Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

fn report_error(e: &Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {e}");
    if let Some(hint) = e.hint() {
        let _ = writeln!(stderr, "hint: {hint}");
    }
}

fn run(cli: &Cli) -> Result<i32> {
    if let Some(dir) = &cli.chdir {
        std::env::set_current_dir(dir).map_err(|source| Error::ChangeDir {
            path: dir.clone(),
            source,
        })?;
    }
    match &cli.command {
        Command::Record(args) => {
            let req = record_request(args)?;
            let repo = open_repo()?;
            let recorded = record::record(&repo, &req)?;
            print_recorded(cli, &recorded);
            Ok(0)
        }
    }
}

/// Opens the repository the way git does: `GIT_DIR`, else discovery from the current directory.
pub fn open_repo() -> Result<Repository> {
    Repository::open_from_env().map_err(|source| Error::NotARepository {
        path: std::env::current_dir().unwrap_or_default(),
        source,
    })
}

fn record_request(args: &RecordArgs) -> Result<RecordRequest> {
    let kind = match args.kind {
        KindArg::Build => Kind::Build,
        KindArg::Init => Kind::Init,
    };
    let template = match (kind, &args.template) {
        (Kind::Build, Some(name)) => Some(name.parse::<Template>()?),
        (Kind::Build, None) => {
            return Err(Error::Inconsistent("a build needs --template NAME".into()));
        }
        (Kind::Init, Some(_)) => {
            return Err(Error::Inconsistent(
                "--kind init takes no --template: plugin installs are not per template".into(),
            ));
        }
        (Kind::Init, None) => None,
    };
    let facts = args
        .facts
        .iter()
        .map(|f| f.parse::<Fact>())
        .collect::<Result<Vec<_>>>()?;
    let root = args
        .root
        .as_deref()
        .map(str::parse::<EvidenceRoot>)
        .transpose()?;
    Ok(RecordRequest {
        kind,
        template,
        log: args.log.clone(),
        exit_code: args.exit_code,
        status: args.status.map(|s| match s {
            StatusArg::Success => Status::Success,
            StatusArg::Failed => Status::Failed,
            StatusArg::Cancelled => Status::Cancelled,
        }),
        started_at: args
            .started_at
            .as_deref()
            .map(|t| proof::parse_time("--started-at", t))
            .transpose()?,
        finished_at: args
            .finished_at
            .as_deref()
            .map(|t| proof::parse_time("--finished-at", t))
            .transpose()?,
        facts,
        branch: args.branch.clone(),
        root,
        signoff: args.signoff.then_some(true),
    })
}

fn short(id: git2::Oid) -> String {
    id.to_string()[..10].to_owned()
}

fn print_recorded(cli: &Cli, r: &Recorded) {
    let filed = &r.filed;
    let proof = &filed.proof;
    let mut stderr = std::io::stderr().lock();
    for c in &r.sync.conflicts {
        let _ = writeln!(
            stderr,
            "warning: left {} alone in {}: {}",
            c.path,
            c.worktree.display(),
            c.reason
        );
    }
    if let Some(e) = &r.sync_error {
        let _ = writeln!(
            stderr,
            "warning: the evidence is committed, but the work tree was not updated: {e}\n\
             hint: `git status` may show the new files as deleted; `git reset -q -- {}` and \
             `git checkout -- {}` bring them back",
            r.root, r.root
        );
    }
    drop(stderr);
    let mut out = std::io::stdout().lock();
    if cli.json {
        let value = serde_json::json!({
            "recorded": true,
            "status": proof.status,
            "kind": proof.kind,
            "template": proof.template,
            "run_id": proof.run_id,
            "commit": filed.commit.to_string(),
            "parent": filed.parent.map(|p| p.to_string()),
            "ref": filed.reference,
            "branch": r.branch,
            "folder": filed.folder,
            "latest_moved": filed.latest_moved,
            "attempts": filed.attempts,
            "worktrees": r.sync.worktrees,
            "conflicts": r.sync.conflicts.iter().map(|c| serde_json::json!({
                "worktree": c.worktree, "path": c.path, "reason": c.reason,
            })).collect::<Vec<_>>(),
            "proof": proof,
        });
        let _ = writeln!(out, "{value:#}");
        return;
    }
    if cli.quiet {
        return;
    }
    let what = match &proof.template {
        Some(t) => format!("{t} {}", proof.run_id),
        None => format!("init {}", proof.run_id),
    };
    if proof.status == Status::Success {
        let branch = r.branch.trim_start_matches("refs/heads/");
        let _ = writeln!(
            out,
            "Recorded {what} on {branch} as {}",
            short(filed.commit)
        );
    } else {
        let _ = writeln!(
            out,
            "Recorded {} run {what} as {} ({}); {} is unchanged",
            proof.status,
            filed.reference,
            short(filed.commit),
            r.branch.trim_start_matches("refs/heads/")
        );
    }
    let _ = writeln!(out, "  folder  {}/", filed.folder);
    let _ = writeln!(
        out,
        "  log     {} ({} bytes, sha256 {})",
        proof.log_file, proof.log_bytes, proof.log_sha256
    );
    if filed.latest_moved {
        let _ = writeln!(out, "  latest  -> {}", proof.run_id);
    }
}
