use stash_macros::lifecycle;

#[lifecycle(name = "Demo", events(Start, Fail, Retry))]
pub enum Phase {
    #[initial]
    #[on(Start => Running, Fail => Failed)]
    Pending,
    #[on(Fail => Failed)]
    Running,
    #[terminal]
    #[on(Retry => Running)]
    Failed,
}

fn main() {}
