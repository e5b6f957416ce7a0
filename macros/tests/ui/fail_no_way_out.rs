use stash_macros::lifecycle;

#[lifecycle(name = "Demo", events(Start, Fail))]
pub enum Phase {
    #[initial]
    #[on(Start => Running, Fail => Failed)]
    Pending,
    Running,
    #[terminal]
    Failed,
}

fn main() {}
